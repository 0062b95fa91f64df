"""Recipes and recipe messages, wire-compatible with python-workflows (Zocalo).

A :class:`Recipe` is the graph of a processing pipeline: integer-numbered steps
plus ``start`` and an optional top-level ``error``. A :class:`RecipeWrapper` is
one step of a running recipe: it turns payloads into
:class:`~zhpc.message.Outgoing` messages for the next steps. Nothing here does
I/O (except reading recipe files, in :mod:`zhpc.recipe.files`): a transport
publishes what the wrapper produces, a service decides when.

The message body carries exactly the keys python-workflows uses (``recipe``,
``recipe-pointer``, ``recipe-path``, ``environment``, ``payload``), encoded the
same way, so Zocalo services and zhpc services can pass messages to each other.

Modules, each importing only those before it: ``data`` (JSON-like values),
``encoding`` (outgoing bodies), ``plans`` (steps checked before, by recipe bytes),
``parameters`` (substitution), ``links`` (reading ``output``/``error``),
``validate`` (problems), ``recipe`` (:class:`Recipe`, merge), ``steps`` (a
step's links and destinations, checked), ``wrapper``
(:class:`RecipeWrapper`), ``files`` (loading and finding recipe files).
"""

from zhpc.recipe.data import MAX_DEPTH, MAX_ITEMS
from zhpc.recipe.files import MAX_FILE_BYTES, find_recipe, load_recipe, load_recipe_file
from zhpc.recipe.parameters import substitute
from zhpc.recipe.recipe import Recipe
from zhpc.recipe.validate import RecipeInvalid
from zhpc.recipe.wrapper import BODY_KEYS, RecipeWrapper

__all__ = [
    "BODY_KEYS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_ITEMS",
    "Recipe",
    "RecipeInvalid",
    "RecipeWrapper",
    "find_recipe",
    "load_recipe",
    "load_recipe_file",
    "substitute",
]
