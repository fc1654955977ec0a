"""Serving: the web page and REST API (FastAPI + uvicorn) that classify uploaded images and explain them."""
