"""The toy model's training script and its quality figures: ``python -m training.toy.train|quality|composition_quality``.

The toy world, its data set and the readers of a composed toy image stay in the package (``tficon.toy``);
these modules are the pipeline around them.
"""
