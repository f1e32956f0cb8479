"""Stage kinds: each module declares one cached step (name, version, params, inputs, plan, build).

``base`` holds the stage type and what a pipeline hands a stage; ``registry`` the kinds a
pipeline file may name. Import the stage module you need (``pointparse.stages.train``): this
package imports nothing, so the light commands (make-points, cache, clicks) never load torch.
"""
