"""Deployment helpers: server configs (config/), a local Cassandra node (cassandra/) and local
multi-process clusters (local/). A package so `deploy.local` imports from the repository root."""
