"""Physics formulas: detector geometries and observables, in physical units."""
