"""Online serving: what the BentoML service (bentos/service.py) runs, importable and testable without BentoML.
Imports core, models (never their training loops), ranking and feedback; the served-list log is feedback/log.py.

bundle.py    the model bundle the package stage assembles and the service loads (checksummed)
engine.py    search, recommend and similar over the bundle, with explanations
online.py    the bandit re-ranker that learns from /feedback, persisted crash-safely
params.py    the serving section of params.yaml, typed (packed into the bundle)
cache.py     hot-request cache: in-process LRU, or Redis
batching.py  adaptive batching of concurrent requests: cache misses on the event loop, encodings in threads
security.py  API keys, input size limit, 422 for bad input (ASGI middleware)
schemas.py   request and response models (the OpenAPI document)
"""
