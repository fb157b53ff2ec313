"""`pgr serve`: the operator's search API and web page (FastAPI), one router per resource in `routes/`."""
