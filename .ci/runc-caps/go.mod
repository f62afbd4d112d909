module eks-inference/ci/runc-caps

go 1.22
