"""The dev ground: a local cluster and a simulated GPU provider on 127.0.0.1."""
