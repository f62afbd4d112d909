"""The AWS side as code: the EKS cluster, its node groups, the autoscaler's IAM role and the ECR repositories (CDK)."""
