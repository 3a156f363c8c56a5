"""parse-dfl: multimodal decentralized federated learning with PARSE and its baselines."""

__version__ = "0.1.0"
