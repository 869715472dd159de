"""Made data: physically sensible generators with known truth, writing the real file formats."""
