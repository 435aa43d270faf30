"""`controlplane demo`: everything local, no Docker, with a live view of the traffic.

Embedded etcd, the control plane (in this process), a real edge Envoy and a real sidecar
Envoy, payments v1, v2 and a faulty v3, and a traffic generator. Then: a canary v1 → v2
promoted by analysis, v2's credential rotated with no failed request, a canary v2 → v3
rolled back by analysis, a summary and the audit log.

| module | job |
|---|---|
| `command` | the `demo` subcommand: flags, signals, the run from start to summary |
| `world` | starts and stops etcd + control plane, Envoys, upstreams; the resources |
| `scenario` | the three steps and their expected outcomes |
| `traffic` | the paced keep-alive clients and their per-version tallies |
| `upstream` | the sample upstream: checks the injected credential, can fail on purpose |
| `view` | the live view and the final tables (rich) |
| `admin` | the admin API calls the demo makes, as an operator would |
"""

from controlplane.demo.command import add_demo_parser, run_demo

__all__ = ["add_demo_parser", "run_demo"]
