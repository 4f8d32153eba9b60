"""Speed, memory and scale benchmarks of the pipeline: ``python -m benchmarks.run`` (``make benchmark``).

Modules: ``run`` (the entry point), ``naive`` (the per-pixel DataLoader reference),
``throughput`` (engine against reference), ``memory`` (peak RSS of a process tree),
``stages`` (stage timers around ``pipeline.run``), ``gpu`` (large-backbone throughput),
``scenes`` (generated scenes and catalogs), ``summary`` (targets and the Markdown report).
``model_forward.py`` is a separate script timing the model presets alone.
"""
