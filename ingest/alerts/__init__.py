"""Alerting on hardware anomalies: rules, evaluation on the stream and in SQL, lifecycle, notifiers."""
