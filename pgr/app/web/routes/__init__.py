"""The API's routers, one per resource; every route declares its authentication dependency."""
