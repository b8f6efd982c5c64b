"""Job-side NeMo 2 recipes (convert, train, export) built from the launcher's JobSpec.

``recipes.cpt`` holds the typed recipe functions, ``recipes.sdpa`` the no-Transformer-Engine attention path,
``recipes.entry`` the ``python -m recipes.entry {convert,train,export} --jobspec PATH`` entrypoint a container
runs. Nothing here is imported by the launcher (it imports NeMo and torch).
"""
