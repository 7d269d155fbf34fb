"""The model: embedder, surrogate fit, Learn-then-Test gate, router and out-of-distribution score.

Pure computation on arrays and texts: nothing here reads or writes a store.
"""
