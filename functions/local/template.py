"""Read a CloudFormation / SAM template and resolve its intrinsic functions locally.

The local stack creates its resources from ``template.yaml`` itself, so names, queue settings and
the functions' environment have one source. This module knows the template language, not AWS:

* :class:`CfnLoader` — a YAML loader that understands the short tags (``!Ref``, ``!GetAtt``,
  ``!Sub``, ``!If``, ``!Equals``, ``!Not``, ``!And``, ``!Or``, ``!Join``, ``!Select``, ``!Split``,
  ``!FindInMap``, ``!Base64``, ``!Condition``) and turns them into the long forms
  (``{"Ref": …}``, ``{"Fn::GetAtt": [resource, attribute]}``…).
* :class:`Template` — parameters (defaults, overrides, their constraints), resources, conditions,
  rules, the ``Globals`` of SAM functions, the functions' handlers.
* :class:`Resolver` — evaluates intrinsics against parameter values, pseudo parameters
  (``AWS::AccountId`` = moto's 123456789012, ``AWS::Region`` = us-east-1, ``AWS::Partition`` =
  aws) and the physical ids of resources created so far. ``!If`` is lazy: the branch not taken is
  never resolved, so it may name resources that do not exist locally.

::

    LocalStackError                 root of the local stack's errors
    └── TemplateError               the template cannot be read, a parameter or rule fails
        └── UnresolvedError         a reference to a resource that does not exist (locally)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PSEUDO_PARAMETERS",
    "CfnLoader",
    "FunctionConfig",
    "LocalStackError",
    "PhysicalResource",
    "Resolver",
    "Template",
    "TemplateError",
    "UnresolvedError",
    "load_template",
]

#: Pseudo parameters as the local stack (moto's default account) answers them.
PSEUDO_PARAMETERS: dict[str, Any] = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-east-1",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NotificationARNs": [],
}
_NO_VALUE = "AWS::NoValue"
SERVERLESS_FUNCTION = "AWS::Serverless::Function"


class LocalStackError(Exception):
    """Root of every error of the local stack (:mod:`functions.local`)."""


class TemplateError(LocalStackError):
    """The template cannot be read or evaluated: bad YAML, a parameter outside its constraints,
    a failed rule, an intrinsic function used wrongly."""


class UnresolvedError(TemplateError):
    """A ``Ref`` / ``Fn::GetAtt`` names a resource that has no physical id (yet, or locally)."""


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus CloudFormation's short-form tags, turned into the long forms."""


def _construct(loader: CfnLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


def _short_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    value = _construct(loader, node)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _short_tag)


def load_template(path: str | Path) -> Template:
    """Read a template file (YAML or JSON; JSON is YAML)."""
    path = Path(path)
    try:
        body = yaml.load(path.read_text("utf-8"), Loader=CfnLoader)
    except OSError as e:
        raise TemplateError(f"cannot read the template {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise TemplateError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(body, dict) or not isinstance(body.get("Resources"), dict):
        raise TemplateError(f"{path} has no Resources section; is it a CloudFormation template?")
    return Template(path=path.resolve(), body=body)


# --------------------------------------------------------------------------------------------
# The template
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhysicalResource:
    """A resource created locally: what ``Ref`` returns and its ``Fn::GetAtt`` attributes."""

    type: str
    ref: Any
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FunctionConfig:
    """A SAM function with ``Globals.Function`` merged in (still unresolved, except the
    handler and the code location)."""

    logical_id: str
    properties: Mapping[str, Any]
    #: ``module.attribute`` (Zip: ``Handler``; Image: ``ImageConfig.Command`` or the
    #: Dockerfile's ``CMD``).
    handler: str
    #: The directory the handler's module is imported from (``CodeUri`` / ``DockerContext``).
    code_root: Path

    @property
    def module(self) -> str:
        return self.handler.rpartition(".")[0]

    @property
    def attribute(self) -> str:
        return self.handler.rpartition(".")[2]


def _merge_globals(global_props: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """SAM's rule: maps merge (the function's keys win), lists add up, scalars are replaced."""
    out = dict(global_props)
    for key, value in own.items():
        current = out.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = _merge_globals(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            out[key] = [*current, *value]
        else:
            out[key] = value
    return out


def _dockerfile_cmd(dockerfile: Path) -> str:
    """The handler named by the last ``CMD`` of a Dockerfile (exec form ``["mod.fn"]`` or
    shell form)."""
    try:
        text = dockerfile.read_text("utf-8")
    except OSError as e:
        raise TemplateError(f"cannot read {dockerfile} to find the handler: {e.strerror}") from e
    logical = re.sub(r"\\\n", " ", text).splitlines()
    commands = [line.strip()[3:].strip() for line in logical
                if re.match(r"^\s*CMD\s", line, flags=re.IGNORECASE)]
    if not commands:
        raise TemplateError(f"{dockerfile} has no CMD naming the Lambda handler")
    cmd = commands[-1]
    if cmd.startswith("["):
        try:
            parts = json.loads(cmd)
        except json.JSONDecodeError as e:
            raise TemplateError(f"{dockerfile}: CMD {cmd} is not a JSON array") from e
        if not parts or not isinstance(parts[0], str):
            raise TemplateError(f"{dockerfile}: CMD {cmd} names no handler")
        return parts[0]
    return cmd.split()[0]


@dataclass
class Template:
    path: Path
    body: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.body.get("Resources") or {}

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return self.body.get("Outputs") or {}

    def resource_type(self, logical_id: str) -> str:
        return str(self.resources.get(logical_id, {}).get("Type", ""))

    # parameters ------------------------------------------------------------------------------
    def parameters(self, overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Parameter values: defaults, replaced by ``overrides``, checked against
        ``AllowedValues`` / ``AllowedPattern`` / ``MinValue`` / ``MaxValue`` as CloudFormation
        does. Values are strings (``CommaDelimitedList``: lists of strings)."""
        declared: dict[str, Any] = self.body.get("Parameters") or {}
        unknown = sorted(set(overrides or {}) - set(declared))
        if unknown:
            raise TemplateError(f"unknown parameter(s) {', '.join(unknown)}; the template "
                                f"declares {', '.join(declared) or 'none'}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            spec = spec or {}
            if overrides and name in overrides:
                raw: Any = overrides[name]
            elif "Default" in spec:
                raw = spec["Default"]
            else:
                raise TemplateError(f"parameter {name} has no default: pass {name}=VALUE")
            values[name] = self._check_parameter(name, spec, raw)
        return values

    @staticmethod
    def _check_parameter(name: str, spec: Mapping[str, Any], raw: Any) -> Any:
        kind = str(spec.get("Type", "String"))
        text = ",".join(map(str, raw)) if isinstance(raw, list) else str(raw)
        if isinstance(raw, bool):
            text = str(raw).lower()
        if kind == "CommaDelimitedList" or kind.startswith("List<"):
            return [part.strip() for part in text.split(",")] if text else []
        allowed = spec.get("AllowedValues")
        if allowed is not None and text not in [str(a).lower() if isinstance(a, bool) else str(a)
                                                for a in allowed]:
            raise TemplateError(f"parameter {name}={text!r} is not one of {allowed}")
        pattern = spec.get("AllowedPattern")
        if pattern and not re.fullmatch(str(pattern), text):
            raise TemplateError(f"parameter {name}={text!r} does not match {pattern}")
        if kind == "Number":
            try:
                number = float(text)
            except ValueError:
                raise TemplateError(f"parameter {name}={text!r} is not a number") from None
            if "MinValue" in spec and number < float(spec["MinValue"]):
                raise TemplateError(f"parameter {name}={text} is below {spec['MinValue']}")
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                raise TemplateError(f"parameter {name}={text} is above {spec['MaxValue']}")
        return text

    # functions -------------------------------------------------------------------------------
    def functions(self) -> list[str]:
        return [k for k, v in self.resources.items() if v.get("Type") == SERVERLESS_FUNCTION]

    def function(self, logical_id: str) -> FunctionConfig:
        resource = self.resources[logical_id]
        globals_ = ((self.body.get("Globals") or {}).get("Function")) or {}
        props = _merge_globals(globals_, resource.get("Properties") or {})
        metadata = resource.get("Metadata") or {}
        if props.get("PackageType") == "Image":
            context = self.directory / str(metadata.get("DockerContext", "."))
            command = (props.get("ImageConfig") or {}).get("Command")
            if command:
                handler = str(command[0])
            else:
                dockerfile = context / str(metadata.get("Dockerfile", "Dockerfile"))
                handler = _dockerfile_cmd(dockerfile)
            root = context
        else:
            handler = props.get("Handler")
            if not isinstance(handler, str):
                raise TemplateError(f"{logical_id} has no Handler")
            code = props.get("CodeUri", ".")
            root = self.directory / (code if isinstance(code, str) else ".")
        if "." not in handler:
            raise TemplateError(f"{logical_id}: handler {handler!r} is not module.function")
        return FunctionConfig(logical_id=logical_id, properties=props, handler=handler,
                              code_root=root.resolve())

    # references ------------------------------------------------------------------------------
    def dependencies(self, logical_id: str) -> set[str]:
        """The other resources that ``logical_id``'s properties (and ``DependsOn``) name."""
        resource = self.resources[logical_id]
        names = references(resource.get("Properties") or {})
        depends = resource.get("DependsOn") or []
        names |= {depends} if isinstance(depends, str) else set(depends)
        return {n for n in names if n in self.resources and n != logical_id}


_SUB_VAR = re.compile(r"\$\{([^}]+)\}")


def references(value: Any) -> set[str]:
    """Every name that ``Ref``, ``Fn::GetAtt`` and ``Fn::Sub`` use inside ``value``."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, Mapping):
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref" and isinstance(arg, str):
                return {arg}
            if key == "Fn::GetAtt" and isinstance(arg, list) and arg:
                return {str(arg[0])}
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                for name in _SUB_VAR.findall(str(text)):
                    if not name.startswith("!") and name not in variables:
                        found.add(name.split(".", 1)[0])
                return found | references(variables)
        for item in value.values():
            found |= references(item)
    return found


# --------------------------------------------------------------------------------------------
# Intrinsic functions
# --------------------------------------------------------------------------------------------


class _Omit:
    """``AWS::NoValue``: the property (or list item) disappears."""


NO_VALUE = _Omit()


class Resolver:
    """Evaluates intrinsic functions. ``resources`` maps logical ids to what has been created;
    it may grow while resources are created (in dependency order)."""

    def __init__(self, template: Template, parameters: Mapping[str, Any],
                 resources: Mapping[str, PhysicalResource] | None = None,
                 pseudo: Mapping[str, Any] | None = None, stack_name: str = "edgeforge-local"
                 ) -> None:
        self.template = template
        self.parameters = dict(parameters)
        self.resources: dict[str, PhysicalResource] = dict(resources or {})
        self.pseudo = {**PSEUDO_PARAMETERS, **(pseudo or {}), "AWS::StackName": stack_name}
        self.pseudo.setdefault(
            "AWS::StackId",
            f"arn:{self.pseudo['AWS::Partition']}:cloudformation:{self.pseudo['AWS::Region']}:"
            f"{self.pseudo['AWS::AccountId']}:stack/{stack_name}/local")
        self._conditions: dict[str, bool] = {}
        self._evaluating: set[str] = set()

    @property
    def account(self) -> str:
        return str(self.pseudo["AWS::AccountId"])

    @property
    def region(self) -> str:
        return str(self.pseudo["AWS::Region"])

    @property
    def partition(self) -> str:
        return str(self.pseudo["AWS::Partition"])

    # conditions and rules --------------------------------------------------------------------
    def condition(self, name: str) -> bool:
        if name in self._conditions:
            return self._conditions[name]
        conditions = self.template.body.get("Conditions") or {}
        if name not in conditions:
            raise TemplateError(f"unknown condition {name!r}")
        if name in self._evaluating:
            raise TemplateError(f"condition {name!r} refers to itself")
        self._evaluating.add(name)
        try:
            value = self._truth(self.resolve(conditions[name]), f"condition {name}")
        finally:
            self._evaluating.discard(name)
        self._conditions[name] = value
        return value

    def enabled(self, logical_id: str) -> bool:
        """Whether a resource (or output) exists with these parameters (its ``Condition``)."""
        entry = (self.template.resources.get(logical_id)
                 or self.template.outputs.get(logical_id) or {})
        name = entry.get("Condition")
        return True if name is None else self.condition(str(name))

    def check_rules(self) -> None:
        """Evaluate ``Rules`` as CloudFormation does before creating anything."""
        for name, rule in (self.template.body.get("Rules") or {}).items():
            applies = rule.get("RuleCondition")
            if applies is not None and not self._truth(self.resolve(applies), f"rule {name}"):
                continue
            for assertion in rule.get("Assertions") or []:
                if not self._truth(self.resolve(assertion.get("Assert")), f"rule {name}"):
                    raise TemplateError(f"rule {name} failed: "
                                        f"{assertion.get('AssertDescription', 'assertion false')}")

    @staticmethod
    def _truth(value: Any, what: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise TemplateError(f"{what} is not a boolean: {value!r}")

    # resolution ------------------------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic function evaluated (``AWS::NoValue`` removed)."""
        out = self._resolve(value)
        return None if out is NO_VALUE else out

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self._resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, Mapping):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(str(arg))
            if key == "Condition":
                return self.condition(str(arg))
            if key.startswith("Fn::"):
                fn = getattr(self, "_fn_" + key[4:].lower(), None)
                if fn is None:
                    raise TemplateError(f"{key} is not supported by the local stack")
                return fn(arg)
        out = {}
        for k, v in value.items():
            resolved = self._resolve(v)
            if resolved is not NO_VALUE:
                out[k] = resolved
        return out

    def ref(self, name: str) -> Any:
        if name == _NO_VALUE:
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self._resource(name).ref

    def get_att(self, resource: str, attribute: str) -> Any:
        physical = self._resource(resource)
        if attribute not in physical.attributes:
            raise UnresolvedError(
                f"{resource}.{attribute}: the local {physical.type} has the attributes "
                f"{', '.join(sorted(physical.attributes)) or 'none'}")
        return physical.attributes[attribute]

    def _resource(self, name: str) -> PhysicalResource:
        if name in self.resources:
            return self.resources[name]
        if name in self.template.resources:
            kind = self.template.resource_type(name)
            raise UnresolvedError(f"{name} ({kind}) does not exist in the local stack")
        raise TemplateError(f"{name!r} is neither a parameter nor a resource of the template")

    def _fn_getatt(self, arg: Any) -> Any:
        if isinstance(arg, str):
            arg = arg.split(".", 1)
        if not isinstance(arg, list) or len(arg) != 2:
            raise TemplateError(f"Fn::GetAtt takes [resource, attribute], not {arg!r}")
        return self.get_att(str(arg[0]), str(self.resolve(arg[1])))

    def _fn_sub(self, arg: Any) -> str:
        if isinstance(arg, str):
            text, variables = arg, {}
        elif isinstance(arg, list) and len(arg) == 2 and isinstance(arg[1], Mapping):
            text, variables = str(arg[0]), {k: self.resolve(v) for k, v in arg[1].items()}
        else:
            raise TemplateError(f"Fn::Sub takes a string or [string, variables], not {arg!r}")

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and name not in self.pseudo:
                resource, attribute = name.split(".", 1)
                return str(self.get_att(resource, attribute))
            value = self.ref(name)
            return ",".join(value) if isinstance(value, list) else str(value)

        return _SUB_VAR.sub(substitute, text)

    def _fn_join(self, arg: Any) -> str:
        if not isinstance(arg, list) or len(arg) != 2:
            raise TemplateError(f"Fn::Join takes [delimiter, list], not {arg!r}")
        items = self.resolve(arg[1])
        if not isinstance(items, list):
            raise TemplateError(f"Fn::Join needs a list, got {items!r}")
        return str(arg[0]).join(str(i) for i in items)

    def _fn_select(self, arg: Any) -> Any:
        if not isinstance(arg, list) or len(arg) != 2:
            raise TemplateError(f"Fn::Select takes [index, list], not {arg!r}")
        index, items = int(self.resolve(arg[0])), self.resolve(arg[1])
        if not isinstance(items, list) or not 0 <= index < len(items):
            raise TemplateError(f"Fn::Select: index {index} is outside {items!r}")
        return items[index]

    def _fn_split(self, arg: Any) -> list[str]:
        if not isinstance(arg, list) or len(arg) != 2:
            raise TemplateError(f"Fn::Split takes [delimiter, string], not {arg!r}")
        return str(self.resolve(arg[1])).split(str(arg[0]))

    def _fn_if(self, arg: Any) -> Any:
        if not isinstance(arg, list) or len(arg) != 3:
            raise TemplateError(f"Fn::If takes [condition, then, else], not {arg!r}")
        return self._resolve(arg[1] if self.condition(str(arg[0])) else arg[2])

    def _fn_equals(self, arg: Any) -> bool:
        if not isinstance(arg, list) or len(arg) != 2:
            raise TemplateError(f"Fn::Equals takes two values, not {arg!r}")
        a, b = (self.resolve(v) for v in arg)
        return str(a) == str(b) if not isinstance(a, list | dict) else a == b

    def _fn_not(self, arg: Any) -> bool:
        if not isinstance(arg, list) or len(arg) != 1:
            raise TemplateError(f"Fn::Not takes one condition, not {arg!r}")
        return not self._truth(self.resolve(arg[0]), "Fn::Not")

    def _fn_and(self, arg: Iterable[Any]) -> bool:
        return all(self._truth(self.resolve(a), "Fn::And") for a in arg)

    def _fn_or(self, arg: Iterable[Any]) -> bool:
        return any(self._truth(self.resolve(a), "Fn::Or") for a in arg)

    def _fn_findinmap(self, arg: Any) -> Any:
        name, first, second = (str(self.resolve(a)) for a in arg)
        try:
            return self.template.body["Mappings"][name][first][second]
        except KeyError as e:
            raise TemplateError(f"Fn::FindInMap: {name}/{first}/{second} is not defined") from e

    def _fn_base64(self, arg: Any) -> str:
        import base64

        return base64.b64encode(str(self.resolve(arg)).encode("utf-8")).decode("ascii")
