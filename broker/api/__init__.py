"""The gRPC surface: servicer, proto conversion and server set-up."""
