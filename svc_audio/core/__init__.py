"""svc_audio's use cases and the signal processing they rest on (no grpc, no generated code, no drivers)."""
