"""The population: where a face stands among the stored faces.

It works on a :class:`~aurum_ml.population.handles.Population` (the stored vectors in
Qdrant, the score index and the users' records in Redis), imports only the core, and never
the pipeline: the pipeline's runtime *is* a Population, handed in by whoever calls.
"""
