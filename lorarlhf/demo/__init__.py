"""The bundled demo: a closed world of short product reviews and a tiny model pretrained on it."""
