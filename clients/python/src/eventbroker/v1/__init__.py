"""Generated protobuf and gRPC stubs for eventbroker.v1 (do not edit: `make proto`)."""
