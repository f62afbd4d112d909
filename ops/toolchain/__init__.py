"""The pinned toolchain: obtaining each tool (tools) and reporting what this machine has (doctor)."""
