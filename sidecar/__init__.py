"""trafficsplit sidecar: routes inference to model versions by feature-flag cohort."""
