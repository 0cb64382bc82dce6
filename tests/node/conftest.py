from tests.runtimes.conftest import base_template, gvisor_config, runtime

__all__ = ["base_template", "gvisor_config", "runtime"]
