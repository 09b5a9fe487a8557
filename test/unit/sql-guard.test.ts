// Guard: no value is ever spliced into SQL text. Every `${...}` inside an SQL template literal in
// src/ must be something that cannot carry a caller's text: a number/bigint/boolean (by its static
// type), a string literal type, a const built only from such pieces, or an identifier helper that
// quotes validated names (database, table and column names). Values go as {name:Type} parameters.
// A new interpolation of a value fails here with its file, line and expression.
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');

/** Return validated identifiers (quoted database/table/column names) or DDL from constant declarations: any arguments. */
const IDENTIFIER_HELPERS = new Set(['qualified', 'tableName', 'columnList', 'structureOf', 'ttlExpression', 'createTableSql', 'createDatabaseSql', 'enum8', 'nullable', 'array']);
/** Build SQL from their arguments: every argument must itself be safe (in practice, string literals). */
const FRAGMENT_HELPERS = new Set(['ipText', 'slot', 'isFrontend']);
/** Constants derived from constant objects (not literal types), with the reason they are safe. */
const CONSTANT_FRAGMENTS: Record<string, string> = {
  INSERT_SETTINGS_SQL: 'joins the numeric values of the constant INSERT_SETTINGS object',
};
/** Properties holding names validated before use. */
const VALIDATED_PROPERTIES = new Set(['this.database']);

const SQL_TEXT = /\b(SELECT|FROM|WHERE|INSERT INTO|ALTER TABLE|CREATE TABLE|CREATE DATABASE|UNION ALL|GROUP BY|ORDER BY|PARTITION BY|JOIN)\b|\{[a-z_]+:[A-Z]\w*|\b(toString|startsWith|arrayCount|arrayZip|arrayMap|fromUnixTimestamp64Nano|toUnixTimestamp64Nano|toDateTime|Enum8|Nullable)\(/;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.generated.ts') ? [p] : [];
  });
}

interface Finding {
  where: string;
  expression: string;
}

function audit(files: string[]): { findings: Finding[]; sqlTemplates: number; checked: number } {
  const program = ts.createProgram(files, { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, strict: true, noEmit: true, skipLibCheck: true, types: ['node'] });
  const checker = program.getTypeChecker();
  const findings: Finding[] = [];
  let sqlTemplates = 0;
  let checked = 0;

  const calleeName = (call: ts.CallExpression): string | undefined => {
    const e = call.expression;
    if (ts.isIdentifier(e)) return e.text;
    if (ts.isPropertyAccessExpression(e)) return e.name.text;
    return undefined;
  };

  const insideHelper = (node: ts.Node): boolean => {
    for (let n: ts.Node | undefined = node.parent; n; n = n.parent) {
      if ((ts.isFunctionDeclaration(n) || ts.isMethodDeclaration(n)) && n.name && IDENTIFIER_HELPERS.has(n.name.getText())) return true;
      if ((ts.isFunctionDeclaration(n) || ts.isMethodDeclaration(n)) && n.name && FRAGMENT_HELPERS.has(n.name.getText())) return true;
      if ((ts.isArrowFunction(n) || ts.isFunctionExpression(n)) && ts.isVariableDeclaration(n.parent) && FRAGMENT_HELPERS.has(n.parent.name.getText())) return true;
    }
    return false;
  };

  const cannotCarryText = (expr: ts.Expression): boolean => {
    const type = checker.getTypeAtLocation(expr);
    const parts = type.isUnion() ? type.types : [type];
    return parts.every((t) => (t.flags & (ts.TypeFlags.NumberLike | ts.TypeFlags.BigIntLike | ts.TypeFlags.BooleanLike | ts.TypeFlags.StringLiteral)) !== 0);
  };

  const safe = (expr: ts.Expression, seen: Set<ts.Node>): boolean => {
    if (seen.has(expr)) return true;
    seen.add(expr);
    if (ts.isParenthesizedExpression(expr)) return safe(expr.expression, seen);
    if (cannotCarryText(expr)) return true;
    if (ts.isStringLiteral(expr) || ts.isNoSubstitutionTemplateLiteral(expr)) return true;
    if (VALIDATED_PROPERTIES.has(expr.getText())) return true;
    if (ts.isTemplateExpression(expr)) return expr.templateSpans.every((s) => safe(s.expression, seen));
    if (ts.isConditionalExpression(expr)) return safe(expr.whenTrue, seen) && safe(expr.whenFalse, seen);
    if (ts.isBinaryExpression(expr) && expr.operatorToken.kind === ts.SyntaxKind.PlusToken) return safe(expr.left, seen) && safe(expr.right, seen);
    if (ts.isCallExpression(expr)) {
      const name = calleeName(expr);
      if (name && IDENTIFIER_HELPERS.has(name)) return true;
      if (name && FRAGMENT_HELPERS.has(name)) return expr.arguments.every((a) => safe(a, seen));
      return false;
    }
    if (ts.isIdentifier(expr)) {
      if (expr.text in CONSTANT_FRAGMENTS) return true;
      let symbol = checker.getSymbolAtLocation(expr);
      if (symbol && symbol.flags & ts.SymbolFlags.Alias) symbol = checker.getAliasedSymbol(symbol);
      const decls = symbol?.declarations ?? [];
      return decls.length > 0 && decls.every((d) => {
        if (!ts.isVariableDeclaration(d) || !d.initializer) return false;
        const list = d.parent;
        const isConst = ts.isVariableDeclarationList(list) && (list.flags & ts.NodeFlags.Const) !== 0;
        return isConst && safe(d.initializer, seen);
      });
    }
    return false;
  };

  for (const sf of program.getSourceFiles()) {
    if (!files.includes(sf.fileName)) continue;
    const visit = (node: ts.Node): void => {
      if (ts.isTemplateExpression(node) && !insideHelper(node)) {
        const text = [node.head.text, ...node.templateSpans.map((s) => s.literal.text)].join(' ');
        if (SQL_TEXT.test(text)) {
          sqlTemplates++;
          for (const span of node.templateSpans) {
            checked++;
            if (!safe(span.expression, new Set())) {
              const { line } = sf.getLineAndCharacterOfPosition(span.expression.getStart());
              findings.push({ where: `${relative(ROOT, sf.fileName)}:${line + 1}`, expression: span.expression.getText() });
            }
          }
        }
      }
      ts.forEachChild(node, visit);
    };
    visit(sf);
  }
  return { findings, sqlTemplates, checked };
}

describe('SQL guard', () => {
  const result = audit(sourceFiles(join(ROOT, 'src')));

  it('catches values spliced into SQL, and lets constants, numbers and identifier helpers through', () => {
    const fixture = audit([join(ROOT, 'test', 'fixtures', 'sql-guard', 'queries.ts')]);
    expect(fixture.findings).toEqual([
      { where: 'test/fixtures/sql-guard/queries.ts:19', expression: 'name' },
      { where: 'test/fixtures/sql-guard/queries.ts:20', expression: 'text' },
      { where: 'test/fixtures/sql-guard/queries.ts:21', expression: 'where' },
      { where: 'test/fixtures/sql-guard/queries.ts:22', expression: "ips.join(',')" },
      { where: 'test/fixtures/sql-guard/queries.ts:23', expression: 'ipText(name)' },
    ]);
    expect(fixture.sqlTemplates).toBe(6);
  });

  it('finds the SQL of the store, etp and the Kubernetes history (the scan works)', () => {
    expect(result.sqlTemplates).toBeGreaterThan(15);
    expect(result.checked).toBeGreaterThan(40);
  });

  it('no value is interpolated into SQL text: only constants, numbers and validated identifiers', () => {
    expect(result.findings).toEqual([]);
  });
});
