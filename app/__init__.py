"""The translation service: a thin FastAPI layer over `mt.Translator`."""
