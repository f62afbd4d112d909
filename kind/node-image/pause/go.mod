module eks-inference/kind/pause

go 1.22
