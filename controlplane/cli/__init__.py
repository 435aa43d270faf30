"""The `controlplane` command line: talks to the admin API, never to etcd directly."""
