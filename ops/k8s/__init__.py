"""Kubernetes: render, objects, node groups, placement, schemas, policies, docs, deploy, the simulated EKS cluster, the
kind cluster and its offline node image."""
