"""svc_analytics's use cases: ingestion (Kafka to the warehouse, each event once) and the
queries of the dashboards and the audit log."""
