"""What every stage shares: typed configuration (`config`), file helpers (`io`: atomic writes,
hashes, manifests, the output-directory ownership rule) and MLflow plumbing (`tracking`).
Imports nothing else from longdoc."""
