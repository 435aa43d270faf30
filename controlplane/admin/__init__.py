"""The admin gRPC API: authentication, roles, and the service over the store."""

from controlplane.admin.auth import Authenticator, LocalAuthenticator, Principal, Role
from controlplane.admin.service import AdminService

__all__ = ["AdminService", "Authenticator", "LocalAuthenticator", "Principal", "Role"]
