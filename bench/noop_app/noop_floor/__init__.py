"""No-op Flower app: the per-round floor of a deployment (bench/deploy_floor.py)."""
