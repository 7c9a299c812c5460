"""What people and client generators read: the Swagger UI and ReDoc pages (``ui``), served from
assets installed with pgvault, and the OpenAPI document's polish (``openapi``)."""
