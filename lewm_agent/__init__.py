"""lewm-agent: LeWorldModel (LeWM) world-model agents for Gymnasium.

Train a JEPA world model from pixels (next-embedding prediction + SIGReg), then plan toward goal
images in its latent space with ``LeWMAgent.act(obs)``.
"""

__version__ = "0.1.0"

_LAZY = {
    "LeWM": "lewm_agent.model",
    "LeWMConfig": "lewm_agent.model",
    "SIGReg": "lewm_agent.model",
    "LeWMAgent": "lewm_agent.agent",
}


def __getattr__(name: str):
    # Lazy so that `import lewm_agent` (e.g. by the CLI) does not pay for torch until it is needed.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lewm_agent' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
