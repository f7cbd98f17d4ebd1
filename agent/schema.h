/* A JSON Schema (draft-07) validator for the keywords the action schemas use. A schema is
 * compiled once from its file; compilation fails on any keyword it does not enforce, so the
 * daemon never runs with a schema it only half understands. Not a general-purpose validator:
 * no $ref to remote documents, no formats. */
#ifndef SCHEMA_H
#define SCHEMA_H

#include <stddef.h>
#include <json-c/json.h>

#define SCHEMA_ERR_MAX 256

struct schema;

/* Compile a schema from a JSON document. On failure returns -EINVAL (or -ENOMEM) and writes a
 * sentence into err naming the keyword and JSON pointer it could not compile. */
int schema_compile(struct json_object *doc, struct schema **ret, char *err, size_t errlen);
/* Read and compile the file at path; errors as above, plus -errno when it cannot be read. */
int schema_load_file(const char *path, struct schema **ret, char *err, size_t errlen);
void schema_free(struct schema *s);
/* 0 if instance is valid. Otherwise -EINVAL and one sentence in err that names the field, as the
 * contract shows: "seconds: must be greater than 0", "frequency: must be an integer",
 * "unknown field 'foo'", "type: required field is missing". */
int schema_validate(const struct schema *s, struct json_object *instance, char *err, size_t errlen);
/* Adds the `default` of every top-level property missing from obj. */
int schema_apply_defaults(const struct schema *s, struct json_object *obj);

#endif
