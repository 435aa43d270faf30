"""secrets: our CA, group certificates, upstream credential values, sealed in etcd.

    crypto.py   SealingKey: encrypts key material before it reaches etcd (Fernet)
    ca.py       CertificateAuthority: creates the CA, issues a group's serving certificate,
                client-only identities (proxies, users) and the server's own
    server_trust.py  the xDS and admin ports' TLS: their key pair, the CAs trusted
    records.py  what is stored under {prefix}/vault/ (sealed JSON) and its plain form
    vault.py    Vault: reads, creates and rotates those records with compare-and-swap
                (CA rotation too); `Material` is what translate needs (PEMs and values,
                redacted in reprs)
    sync.py     SecretSync: issues and rotates when due, hands each change to the
                publisher, retires a rotated-out CA once the fleet ACKed

Only model is imported: etcd is reached through the `SecretKV` protocol (the store's
EtcdKV satisfies it) and audited writes through a `Committer` the wiring supplies.
"""

from controlplane.secrets.ca import CertificateAuthority, IssuedCertificate
from controlplane.secrets.crypto import SealingKey
from controlplane.secrets.vault import Material, Vault

__all__ = ["CertificateAuthority", "IssuedCertificate", "Material", "SealingKey", "Vault"]
