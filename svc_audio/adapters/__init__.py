"""svc_audio's adapters: the stores, the event outbox and the other replicas that its ports stand for."""
