"""From a recipe or a request to a run folder: parse and resolve recipes, run their stages,
evaluate, scan a checkpoint or a training mix. Uses the method packages; they never use it.
"""
