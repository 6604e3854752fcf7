"""The layer rules of the code map (README, shared design): one folder per layer, imports point down only.

Walks every module's AST, function bodies included (an import inside a function runs like any other and can
close a cycle), and fails naming the offending edge with file:line.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# layer -> the layers it may import besides itself. configs/validate.py may import any library layer; the
# experiment files only configs/ and models/ (the variant tables).
LIBRARY = ('text', 'diffusion', 'models', 'input_pipeline', 'evaluation', 'training')
ALLOWED = {
    'text': (),
    'diffusion': (),
    'models': (),
    'input_pipeline': ('text',),
    'evaluation': ('models', 'text', 'input_pipeline'),
    'training': ('diffusion', 'models'),
    'configs': ('models',),
    'jobs': LIBRARY + ('configs',),
    'main': LIBRARY + ('configs', 'jobs'),
    'ablate': LIBRARY + ('configs', 'jobs'),
    'benchmarks': LIBRARY + ('configs', 'jobs', 'benchmarks'),
}
SPECIAL = {'configs/validate.py': LIBRARY + ('configs',)}
# Only main.py's per-mode dispatch may import project modules inside functions.
LOCAL_IMPORTS_ALLOWED = ('main.py',)


def project_modules():
  modules = {}
  for layer in ALLOWED:
    if os.path.isfile(os.path.join(ROOT, layer + '.py')):
      modules[layer] = layer + '.py'
      continue
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, layer)):
      dirnames[:] = [d for d in dirnames if d != '__pycache__']
      for name in filenames:
        if name.endswith('.py'):
          path = os.path.relpath(os.path.join(dirpath, name), ROOT)
          module = path[:-3].replace(os.sep, '.')
          modules[module[:-len('.__init__')] if module.endswith('.__init__') else module] = path
  return modules


def imports(path, modules):
  """(imported project module, line, inside a function) for each import in the file."""
  tree = ast.parse(open(os.path.join(ROOT, path)).read())
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
        names = [f'{child.module}.{a.name}' for a in child.names]  # a submodule, or a name of the module
      for name in names:
        while name and name not in modules:
          name = name.rpartition('.')[0]
        if name and (name, child.lineno) not in {(m, line) for m, line, _ in found}:
          found.append((name, child.lineno, in_function))
      visit(child, local)

  visit(tree, False)
  return found


def layer_of(module):
  return module.split('.')[0]


def graph():
  modules = project_modules()
  return modules, {m: imports(p, modules) for m, p in modules.items()}


def test_every_import_points_down_the_layers():
  modules, edges = graph()
  bad = []
  for module, found in edges.items():
    path = modules[module]
    allowed = SPECIAL.get(path, ALLOWED[layer_of(module)])
    for target, line, _ in found:
      if layer_of(target) != layer_of(module) and layer_of(target) not in allowed:
        bad.append(f'{path}:{line}: {module} imports {target} ({layer_of(module)}/ may import only '
                   f'{", ".join(allowed) or "nothing of the project"})')
  assert not bad, '\n'.join(bad)


def test_no_project_import_inside_a_function():
  modules, edges = graph()
  bad = [
      f'{modules[m]}:{line}: imports {target} inside a function; import it at the top of the file'
      for m, found in edges.items() if modules[m] not in LOCAL_IMPORTS_ALLOWED for target, line, local in found if local
  ]
  assert not bad, '\n'.join(bad)


def test_the_import_graph_has_no_cycle():
  modules, edges = graph()
  state, stack = {}, []

  def visit(module):
    state[module] = 'open'
    stack.append(module)
    for target, line, _ in edges[module]:
      if target == module:
        continue
      if state.get(target) == 'open':
        cycle = stack[stack.index(target):] + [target]
        raise AssertionError(f'import cycle: {" -> ".join(cycle)} (closed at {modules[module]}:{line})')
      if target not in state:
        visit(target)
    stack.pop()
    state[module] = 'done'

  for module in sorted(modules):
    if module not in state:
      visit(module)


def test_the_rules_see_every_layer():
  """A layer folder this test does not know would escape its rules."""
  modules = project_modules()
  assert {layer_of(m) for m in modules} == set(ALLOWED)
  top = {name for name in os.listdir(ROOT) if name.endswith('.py')}
  assert top <= {f'{layer}.py' for layer in ALLOWED}, f'top-level modules outside the layers: {sorted(top)}'
