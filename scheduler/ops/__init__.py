"""Operations: health check, Prometheus metrics (console and member) and structured logs."""
