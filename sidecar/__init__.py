"""trafficsplit sidecar: routes inference to model versions by feature-flag cohort."""

__version__ = "0.1.0"
