"""The steps that chain the stages: make a run, reuse a cached one, build a site.

make_run    checkpoint + windows → a run (model, replay, scores, traces, impulse, provenance)
run_cache   a configured run replayed only when its inputs changed
build       gather every run of a site, then hand them to `report.site`
"""
