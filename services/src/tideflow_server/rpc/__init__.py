"""gRPC plumbing shared by every role: servers, typed errors, interceptors."""
