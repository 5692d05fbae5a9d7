"""Local stack: moto server, resources from template.yaml, uvicorn serving every router."""
