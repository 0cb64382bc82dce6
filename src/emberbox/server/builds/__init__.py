"""Templates built through the API: names and tags, uploaded build files, the build queue."""
