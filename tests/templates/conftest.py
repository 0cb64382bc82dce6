from tests.runtimes.conftest import base_template, gvisor_config, make_sandbox, runtime

__all__ = ["base_template", "gvisor_config", "make_sandbox", "runtime"]
