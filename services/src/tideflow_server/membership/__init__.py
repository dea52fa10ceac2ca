"""Cluster membership: who serves which role, and which host owns which shard or partition."""

from tideflow_server.membership._membership import Membership, rendezvous_owner, stable_hash

__all__ = ["Membership", "rendezvous_owner", "stable_hash"]
