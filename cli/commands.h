/* commands.h - entry points of the subcommands that live in their own files.
 *
 * Each takes the arguments from the subcommand name on (argv[0] = "debug")
 * and returns the process exit status (0 ok, 1 failure, 2 usage or bad input).
 */
#ifndef TIDAL_CLI_COMMANDS_H
#define TIDAL_CLI_COMMANDS_H

int debug_main(int argc, char **argv);
int debug_step(int argc, char **argv); /* `tidal debug step` (debug_step.c) */
int tokenize_main(int argc, char **argv);
int generate_main(int argc, char **argv);
extern const char generate_usage[]; /* the generate entry of the command table shows it */
int env_main(int argc, char **argv);
int run_main(int argc, char **argv);
int controller_main(int argc, char **argv);
int trainer_main(int argc, char **argv);
int rollout_main(int argc, char **argv);
int status_main(int argc, char **argv);
int creds_main(int argc, char **argv);
int serve_main(int argc, char **argv);
int init_model_main(int argc, char **argv);
extern const char init_model_usage[];
int view_main(int argc, char **argv);
extern const char view_usage[];
extern const char serve_usage[];
extern const char creds_usage[];

extern const char env_usage[];

#endif
