"""Model families, loading, generation, freezing and export."""
