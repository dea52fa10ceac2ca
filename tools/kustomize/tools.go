//go:build tools

// Package tools pins the kustomize command that renders deploy/k8s (make setup builds it
// into .venv/bin; tests/unit/test_k8s_manifests.py renders every overlay with it).
package tools

import _ "sigs.k8s.io/kustomize/kustomize/v5"
