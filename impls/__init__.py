"""poolbench's in-tree plugins: one module per pooler or per DPP tier.

Every module here is imported by :func:`poolbench.registry.load_plugins`;
importing it runs its ``@register`` decorators.  Third-party packages do the
same through the ``poolbench.impls`` entry-point group.
"""
